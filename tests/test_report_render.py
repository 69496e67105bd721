"""The report of a `fit` as a person sees it: rendered by headless Chromium (Debian's package,
installed by .ci/run), every figure decoded, no two boxes on the page overlapping, the headline
first. Skipped, with that reason, where Chromium is not installed."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# appended to a copy of the report (the report itself carries no script): measures the page
CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const boxes = [...document.querySelectorAll('h1,h2,p,figure,table,figcaption,img,pre')];
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (a.contains(b) || b.contains(a)) continue;
    const r = a.getBoundingClientRect(), s = b.getBoundingClientRect();
    const w = Math.min(r.right, s.right) - Math.max(r.left, s.left);
    const h = Math.min(r.bottom, s.bottom) - Math.max(r.top, s.top);
    if (w > 1 && h > 1) overlaps.push(a.tagName + '/' + b.tagName + ':' +
                                      (a.textContent || a.alt || '').slice(0, 30));
  }
  const first = document.querySelector('section h2');
  const out = document.createElement('pre');
  out.id = 'layout-check';
  out.textContent = JSON.stringify({images: imgs.length, broken, overlaps,
                                    first: first ? first.textContent : null});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian "
                    "package chromium; .ci/run installs it)")
def test_fit_report_renders_every_figure_without_overlap(tmp_path):
    from selfsup.data import load_dataset

    ds = load_dataset("digits", split="train", image_size=16)
    for c in (0, 1, 2):
        for split, sl in (("lab", slice(0, 8)), ("test", slice(8, 20))):
            d = tmp_path / split / str(c)
            d.mkdir(parents=True)
            for i in np.flatnonzero(ds.labels == c)[sl]:
                Image.fromarray(ds.images[i]).save(d / f"{i}.png")
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "lab"), "--test", str(tmp_path / "test"), "-o", str(out),
                 "--ssl-steps", "4", "--steps", "4", "train.progress=false",
                 "augment.flip_p=0"]) == 0
    page = (out / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    res = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                          "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1200,3000",
                          "--virtual-time-budget=5000", "--dump-dom", f"file://{probe}"],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="layout-check">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    found = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert found["images"] >= 5 and found["broken"] == [], found
    assert found["overlaps"] == [], found["overlaps"][:5]
    assert found["first"] == "Headline"          # the answer comes first
    assert "Test accuracy" in page and "most common class" in page
