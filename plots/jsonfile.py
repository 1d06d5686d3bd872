"""Reading the JSON the plot and A/B scripts take, with an error that names the file. No plotting
imports, so that scripts/ab_summary.py can use it on a GPU machine whose python3 has no matplotlib."""
import json


class InputError(Exception):
    pass


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: missing")
    except OSError as e:
        raise InputError(f"{path}: {e}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: malformed JSON ({e})")
