r"""MoCo-v3 pretraining of CAST-S (cast_seg, pretrain stage) on COCO train2017 (400 epochs, 40 warmup).

    python -m cast_jax.main --config=configs/moco_cast_seg_s_coco.py --workdir=/tmp/moco_cast_seg_s_coco \
        --config.data.path=COCO_ROOT

Original: scripts/moco/train_coco_cast.sh (-a cast_seg_small_pretrain), checkpoints every 50 epochs; VOC
evaluation via SPML: 38.4 mIoU before fine-tuning, 67.6 after. Images unlabeled (flat folder), so kNN is off.
"""

from cast_jax.train.config_lib import finalize, moco_defaults


def get_config(arg=None):
  c = moco_defaults()
  c.model.update(kind='cast_seg_pretrain', variant='small')
  c.data.update(name='flat_folder', train_split='train2017', eval_split='val2017')
  c.num_epochs, c.warmup_epochs = 400, 40
  del c.evals['knn']  # unlabeled images
  return finalize(c, arg)
