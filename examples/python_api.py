"""The Python API end to end on the synthetic sets, small and fast (about 2 minutes on 2 CPU cores).

    python examples/python_api.py [--out outputs/api_example]

Trains a tiny classifier, detector and embedder, then uses them from Python: predict on files,
arrays and PIL images, draw detections, verify and identify faces, export, profile.
The networks train for 2 epochs: the printed numbers show the wiring, not what the models can do
(a 2-epoch embedder may map every face to nearly the same point).

With the package installed (pip install -e .), or from the repository root with PYTHONPATH=.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import mbtasks

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--out", type=Path, default=Path("outputs/api_example"))
args = p.parse_args()
data = args.out / "data"
tiny = ["backbone.width=0.25", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", f"data_dir={data}"]

# classification on the synthetic shapes (generated into <out>/data on first use)
cls = mbtasks.train("classification", [*tiny, "data.generator.train_per_class=40", "data.generator.val_per_class=10",
                                       "data.generator.test_per_class=10", "data.generator.image_size=32",
                                       "data.image_size=32"], run_dir=args.out / "classification")
print("classification test top-1:", cls.metrics["test/acc_top1"], "plots:", sorted(p.name for p in cls.run_dir.glob("*.png")))
classifier = mbtasks.load(cls.best_checkpoint)
image = sorted((data / "synthetic_shapes" / "test" / "circle").iterdir())[0]
for r in classifier.predict([image, Image.open(image), np.asarray(Image.open(image))]):
    print(f"  {r.source}: {r.label} {r.score:.3f}, top-3 {[(t.label, round(t.score, 3)) for t in r.top_k[:3]]}")
print("  profile:", classifier.profile(repeats=5))
print("  export:", classifier.export("onnx", args.out / "classifier.onnx")["path"])
print("  re-tested:", mbtasks.test(cls.best_checkpoint, run_dir=args.out / "classification_test").metrics["test/acc_top1"])

# detection of faces in the synthetic face scenes
det = mbtasks.train("detection", [*tiny, "data=synthetic_face_scenes", "data.generator.train_images=64",
                                  "data.generator.val_images=8", "data.generator.test_images=8",
                                  "data.image_size=96"], run_dir=args.out / "detection")
detector = mbtasks.load(det.best_checkpoint)
scene = data / "synthetic_face_scenes" / "test" / "00000.png"
(found,) = detector.predict(scene)
print(f"detection test mAP@0.5 {det.metrics['test/map_50']:.3f}; {scene.name}: {len(found)} boxes, best",
      found.boxes[:1].round(1).tolist(), found.scores[:1].round(3).tolist())
found.save(args.out / "detections.png", score_threshold=0.2)

# face embeddings, then verification and identification
emb = mbtasks.train("embedding", [*tiny, "data.generator.num_identities=40", "data.generator.images_per_identity=6",
                                  "data.generator.image_size=32", "data.image_size=32", "data.val_identities=5",
                                  "data.test_identities=5", "data.num_folds=2", "data.pairs_per_fold=20"],
                    run_dir=args.out / "embedding")
embedder = mbtasks.load(emb.best_checkpoint)
faces = data / "synthetic_faces"
a, b, c = faces / "id_00000" / "id_00000_0001.png", faces / "id_00000" / "id_00000_0002.png", faces / "id_00001" / "id_00001_0001.png"
print("verify same person:", embedder.verify(a, b), "\nverify two people:", embedder.verify(a, c))
gallery = embedder.gallery(data / "synthetic_face_scenes" / "gallery")
for photo in mbtasks.Pipeline(detector, embedder, score_threshold=0.3).identify(scene, gallery):
    print(f"{photo.source}: {len(photo.faces)} faces, first: {[(f.identity, round(f.distance, 3)) for f in photo.faces[:5]]}")
    photo.save(args.out / "identities.png")
