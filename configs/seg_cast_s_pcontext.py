r"""The Segmenter fine-tuning CAST-S on Pascal Context (60 classes, background included), as the original
(published: **49.1 mIoU**,
single scale, ``segm/eval/miou_cast --singlescale``).

    python -m cast_jax.convert best_checkpoint.pth cast_s_deit.npz   # the published DeiT CAST-S (cast_deit)
    python -m cast_jax.main --config=configs/seg_cast_s_pcontext.py --workdir=/tmp/seg_cast_s_pcontext \
        --config.init_checkpoint=cast_s_deit.npz --config.data.data_dir=~/tensorflow_datasets

Start: the DeiT ImageNet-1K checkpoint ``best_checkpoint.pth`` (CAST-S, 80.4 top-1; HF ``twke/CAST``,
``snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth``) converted to ``cast_deit``; its encoder goes into the
``cast_seg_deit`` encoder (``block_fusion`` fresh, position table resampled to the crop's grid) under a fresh
mask-transformer decoder (``config.init_checkpoint`` is required in spirit: without it the encoder starts from
scratch). Batch 16, 256 epochs (80,128 updates), 480 crops, 900
superpixels; evaluation window 480, stride 448.

Data: the TFDS ArrayRecord build of ``data/pascal_context`` (``cast_jax.data.segmentation_sources``: records with
'image'
and a 'label_map' of class indices) under ``--config.data.data_dir``; without it the run stops naming the archives
to download and the build command.
"""

from cast_jax.train.config_lib import finalize, segmenter_defaults


def get_config(arg=None):
  c = segmenter_defaults('pascal_context')
  # Every 8 epochs of ceil(4998 / 16) steps (segm/config.yml); the last step always evaluates.
  c.eval_every_steps = 8 * 313
  return finalize(c, arg)
