"""Make the README's napari screenshot: a demo side-car opened with the plugin, Threshold docked.

Run under a display, e.g. ``make napari-screenshot`` (Xvfb):
``xvfb-run -a -s "-screen 0 1280x1024x24" python docs/img/napari_screenshot.py OUT.png``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

# never the user's napari settings (window geometry, the reader preference the plugin stores)
os.environ["NAPARI_CONFIG"] = os.path.join(tempfile.mkdtemp(prefix="napari-cfg-"), "s.yaml")

import napari  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

import patchsieve as ps  # noqa: E402
from patchsieve.demo import write_demo_data  # noqa: E402


def _settle(seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def main(out: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="patchsieve-shot-"))
    paths = write_demo_data(tmp, kind="hagen2d", size="small", shapes={"hagen2d": (3, 768, 768)})
    sc = ps.compute(paths["hagen2d"], ps.ShannonPatchFilterConfig(threshold=7.5), (64, 64),
                    str(tmp / "hagen2d.patchsieve.zarr"),
                    cluster={"processes": False, "n_workers": 1})
    viewer = napari.Viewer(show=True, title="patchsieve: hagen2d.patchsieve.zarr")
    viewer.window.resize(1180, 700)
    viewer.open(sc.path, plugin="patchsieve")
    _dock, widget = viewer.window.add_plugin_dock_widget("patchsieve", "Threshold")
    widget.set_threshold(7.9)  # moved, not applied: the mask and the counts follow
    viewer.reset_view()
    _settle(1.5)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    img = Image.fromarray(np.asarray(shot)[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE,
                                                             colors=96)
    img.save(out, optimize=True)
    print(f"wrote {out}: {Path(out).stat().st_size / 1024:.0f} KiB")
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "napari-threshold.png")
