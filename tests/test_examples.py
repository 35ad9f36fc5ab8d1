"""The examples run end to end on a tiny trained model (public API only)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fastadapt.data.synthetic import load_synthetic
from fastadapt.engine import train

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "data.dataset=synthetic", "data.split=default", "data.image_size=16", "backbone.args.hidden=16",
    "backbone.args.image_size=16", "train_task.ways=5", "train_task.queries=3", "train.iterations=40",
    "train.val_every=20", "train.val_episodes=10", "train.log_every=10", "train.checkpoint_every=20",
    "eval.episodes=5", "optim.lr=0.01",
]


def save(x, path):
    Image.fromarray((x[0].numpy() * 255).astype(np.uint8)).save(path)


def test_classify_my_images(tmp_path):
    run = train("omniglot/protonet-5w1s", TINY, run_dir=tmp_path / "run", progress=False).run_dir
    test = load_synthetic(partition="test", image_size=16)
    support, queries = tmp_path / "support", tmp_path / "queries"
    queries.mkdir()
    for c in range(3):
        (support / test.class_names[c]).mkdir(parents=True)
        for i in range(2):
            save(test.x[20 * c + i], support / test.class_names[c] / f"{i}.png")
        for i in range(2, 5):
            save(test.x[20 * c + i], queries / f"{test.class_names[c]}_{i}.png")
    script = REPO / "examples" / "classify_my_images.py"
    out = subprocess.run([sys.executable, str(script), str(run), str(support), str(queries)],
                         capture_output=True, text=True, check=True).stdout
    predictions = re.findall(r"^(pattern\d+)_\d\.png: (pattern\d+) \((\d+\.\d) %\)$", out, re.M)
    assert len(predictions) == 9 and out.startswith("3 classes from 6 support images")
    correct = sum(truth == guess for truth, guess, _ in predictions)
    assert correct >= 6, out  # chance is 3 of 9
