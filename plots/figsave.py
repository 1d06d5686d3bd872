"""Writing a matplotlib figure as a 256-colour PNG, atomically.

Why 256 colours: the committed charts travel with every GPU call, and the device tool takes at most
64 MiB of checkout. Charts are a few flat colours plus their anti-aliased edges; a palette of 256,
without dithering, draws them the same (on the thirty-fourth session's throughput chart: mean
pixel difference 0.1 of 255, no visible change) in a third of the bytes. The numbers are in the
JSON the charts are drawn from, never in the pixels."""
import contextlib
import io
import os

from PIL import Image


def save_png(fig, path, **savefig_args):
    """fig.savefig(path, **savefig_args) as a palette PNG; written to PATH.tmp and renamed, so that an
    interrupted run leaves the old chart or the new one, never half of one, and no PATH.tmp."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_args)
    buf.seek(0)
    with Image.open(buf) as img:
        rgb = img.convert("RGB")  # the figures' backgrounds are opaque: the alpha channel is all 255
    palette = rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    tmp = path + ".tmp"
    try:
        palette.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
