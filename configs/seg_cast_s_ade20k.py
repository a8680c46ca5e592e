r"""The Segmenter fine-tuning CAST-S on ADE20K (150 classes, zero label reduced), as the original
(published: **43.1 mIoU**, single scale, ``segm/eval/miou_cast --singlescale``).

    python -m cast_jax.convert best_checkpoint.pth cast_s_deit.npz   # the published DeiT CAST-S (cast_deit)
    python -m cast_jax.main --config=configs/seg_cast_s_ade20k.py --workdir=/tmp/seg_cast_s_ade20k \
        --config.init_checkpoint=cast_s_deit.npz --config.data.data_dir=~/tensorflow_datasets

Start: the DeiT ImageNet-1K checkpoint ``best_checkpoint.pth`` (CAST-S, 80.4 top-1; HF ``twke/CAST``,
``snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth``) converted to ``cast_deit``; its encoder goes into the
``cast_seg_deit`` encoder (``block_fusion`` fresh, position table resampled to the crop's grid) under a fresh
mask-transformer decoder (``config.init_checkpoint`` is required in spirit: without it the encoder starts from
scratch). Batch 8, 64 epochs (161,728 updates), 512 crops, 1024 superpixels;
evaluation window 512, stride 480.

Data: the TFDS ArrayRecord build of ``data/ade20k`` (``cast_jax.data.segmentation_sources``: records with 'image'
and a 'label_map' of class indices) under ``--config.data.data_dir``; without it the run stops naming the archives
to download and the build command.
"""

from cast_jax.train.config_lib import finalize, segmenter_defaults


def get_config(arg=None):
  c = segmenter_defaults('ade20k')
  # Every 2 epochs of ceil(20210 / 8) steps (segm/config.yml); the last step always evaluates.
  c.eval_every_steps = 2 * 2527
  return finalize(c, arg)
