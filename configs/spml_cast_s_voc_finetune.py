r"""SPML fine-tuning of the COCO MoCo CAST-S on Pascal VOC 2012 (published: **67.6 mIoU** on val, single scale).

    python -m cast_jax.published moco_cast_small_coco   # epoch 400; prints ~/cast_checkpoints/moco_cast_small_coco.npz
    python -m cast_jax.main --config=configs/spml_cast_s_voc_finetune.py --workdir=/tmp/spml_cast_s_voc \
        --config.init_checkpoint=$HOME/cast_checkpoints/moco_cast_small_coco.npz \
        --config.data.data_dir=~/tensorflow_datasets
    python -m cast_jax.evaluate --checkpoint=/tmp/spml_cast_s_voc --config=configs/spml_cast_s_voc_finetune.py \
        --config.data.data_dir=~/tensorflow_datasets --evaluator=miou

Original: ``scripts/spml/finetune_cast.sh`` (``SPML/pyscripts/train/train_softmax.py``, then
``inference_softmax_suppix.py`` and ``benchmark_by_mIoU.py``). Start: the published MoCo-v3 CAST-S pretrained on
COCO for **400 epochs** (``checkpoint_0399.pth.tar``, a ``cast_seg_pretrain`` MoCo checkpoint; ``cast_jax.published``
'moco_cast_small_coco'); its query encoder goes into the ``cast_seg`` segmentation stage with the 28x28 sin-cos
table resampled to 64x64 (``loading.moco_seg_into_seg``), the SoftmaxClassifier starts with PyTorch's
initialisation. Recipe (``config_lib.spml_defaults``): 30,000 updates of batch 16, crop 512, SPML's SGD at 3e-3
with groups x1/x2/x10/x20 on ``lr_poly`` with 100 warm-up steps, ``cls_token`` and the position tables frozen; the
loss is the original's mean of 4 per-GPU means (``--config.loss_reduction=global`` for the plain mean).
Evaluation ``spml_miou`` on the 1,449 val images (SEEDS 1024 at full resolution, max side 512, SPML's benchmark).

Data: the ``voc_sbd`` build of ``data/voc_sbd`` (``python data/build.py voc_sbd --manual_dir=<archives>``; splits
'train_aug': the 10,582 images of SPML's ``panoptic_train+`` list, and 'validation': 1,449) with 21-class label
maps, 255 void, under ``--config.data.data_dir``; without it the run stops naming what to download and build.
Not run here (no VOC).
"""

from cast_jax.train.config_lib import finalize, spml_defaults


def get_config(arg=None):
  return finalize(spml_defaults(), arg)
