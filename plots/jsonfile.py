"""Reading the JSON the plot and A/B scripts take, with an error that names the file. No plotting
imports, so that scripts/ab_summary.py can use it on a GPU machine whose python3 has no matplotlib.
A file whose name ends in .xz is read through lzma (the committed Chrome traces are kept so)."""
import json
import lzma


class InputError(Exception):
    pass


def load_json(path):
    try:
        with (lzma.open(path, "rt") if path.endswith(".xz") else open(path)) as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: missing")
    except OSError as e:
        raise InputError(f"{path}: {e}")
    except (json.JSONDecodeError, UnicodeDecodeError, lzma.LZMAError, EOFError) as e:
        raise InputError(f"{path}: malformed JSON ({e})")
