"""``python -m mbtasks [key=value ...]`` (and the ``mbtasks`` console script).

``--help`` and ``--version`` are answered here, without loading torch or composing a config;
everything else goes to the Hydra command line in :mod:`mbtasks.cli` (``weights ...``: the
published-weights tool, :mod:`mbtasks.weights_cli`).
"""

from __future__ import annotations

import sys

from mbtasks import __version__

HELP = f"""\
mbtasks {__version__}: one MobileNet backbone (V1 / V2, any width), three vision tasks, trained with
PyTorch Lightning from Hydra configs. Every run writes into its own folder:
outputs/<task>/<date>/<time>/ (config.yaml, metrics.json, checkpoints/, tensorboard/, plots).

usage: python -m mbtasks [key=value ...]        (or: mbtasks [key=value ...])
       python -m mbtasks weights list|where|convert ...   published ImageNet weights
       python -m mbtasks shards write IMAGEFOLDER DST       LitData shards for data=shards

tasks (task=)
  classification   ImageNet-style classifier; data=imagefolder: DIR/{{train,val[,test]}}/<class>/<image>
  detection        SSD / SSDLite boxes; data=voc (Pascal VOC xml), coco (json), yolo, dlib_xml, wider_face
  embedding        FaceNet-style face embeddings; data=faces: DIR/<identity>/<image>
  (without data.root each task trains on a small synthetic set it generates)

modes (mode=)
  train     fit, then test the best checkpoint (default)
  test      re-evaluate ckpt_path=...
  predict   ckpt_path=... predict.input=FILE_OR_DIR: answers as JSON (+ drawn images)
  export    ckpt_path=... export.format=onnx|torchscript: pixels in, answers out, verified
  profile   parameters, mult-adds, latency
  check     scan the configured data set before training (exit 2 when it cannot train)
  convert   write the configured detection data as COCO json

keys people use
  data.root=DIR              your data (with data=imagefolder|voc|coco|yolo|faces ...)
  backbone=mobilenet_v1      or mobilenet_v2 | timm
  backbone.width=1.0         width multiplier: 1.0, 0.75, 0.5, 0.25 ...
  backbone.pretrained=auto   imagenet | PATH (a checkpoint or state dict) | null (from scratch)
  data.image_size=224        input side in pixels (>= 32)
  train.time=10m             wall-clock budget the LR schedule follows (90s, 1h30m ...)
  trainer.max_epochs=N       epochs when train.time is not given
  data.batch_size=32  optimizer.lr=0.01  trainer.accelerator=gpu
  ckpt_path=PATH             the checkpoint test / predict / export use
  resume=RUN_DIR             continue a killed training run in its own folder
  hydra.run.dir=DIR          where this run writes (a new or empty folder for mode=train)

examples
  python -m mbtasks                                          synthetic shapes, about 3 min on 2 CPU cores
  python -m mbtasks data=imagefolder data.root=photos/ train.time=5m
  python -m mbtasks task=detection data=voc data.root=DIR backbone.width=0.5 train.time=10m
  python -m mbtasks mode=predict ckpt_path=RUN/checkpoints/best.ckpt predict.input=photos/
  python -m mbtasks mode=export ckpt_path=RUN/checkpoints/best.ckpt export.format=onnx
  python -m mbtasks resume=outputs/classification/2026-12-07/10-00-00

the full config
  python -m mbtasks [key=value ...] --cfg job    every key and value this command line composes
  groups (group=name): task backbone data head optimizer scheduler trainer augment finetune experiment
  README.md for the rest; --hydra-help for Hydra's own flags. Mistakes: one error: line, exit code 2.
"""


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] not in (["weights"], ["shards"]):
        if any(arg in ("-h", "--help") for arg in argv):
            print(HELP, end="")
            return
        if "--version" in argv:
            print(f"mbtasks {__version__}")
            return
    # The CLI loads torch, Lightning and the tasks (seconds): only once it is needed.
    from mbtasks import cli

    cli.main()


if __name__ == "__main__":
    main()
