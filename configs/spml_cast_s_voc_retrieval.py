r"""SPML segment retrieval with the COCO MoCo CAST-S on Pascal VOC 2012 (published: **38.4 mIoU** on val,
"before fine-tuning": no parameter is trained; train+ labels only name the memory's prototypes).

    python -m cast_jax.published moco_cast_small_coco_ep150   # epoch 150; prints the converted .npz
    python -m cast_jax.evaluate.spml_retrieval_main --config=configs/spml_cast_s_voc_retrieval.py \
        --checkpoint=$HOME/cast_checkpoints/moco_cast_small_coco_ep150.npz --data_dir=VOCdevkit \
        --memory_list=SPML/datasets/voc12/panoptic_train+_hed.txt --query_list=SPML/datasets/voc12/panoptic_val.txt

Not a training config: ``cast_jax.evaluate.spml_retrieval_main`` reads its fields as the defaults of its options
(any ``--option`` on the command line wins). Original: ``scripts/spml/nn_cast.sh`` (``prototype_suppix.py`` on
train+, ``inference_suppix.py`` on val, ``benchmark_by_mIoU.py``). Checkpoint: the published MoCo-v3 CAST-S
pretrained on COCO, **epoch 150** (``snapshots/moco/coco/cast_small/checkpoint_0149.pth.tar``, a
``cast_seg_pretrain`` MoCo checkpoint; ``cast_jax.published`` 'moco_cast_small_coco_ep150'), not the epoch-400 one
that fine-tuning starts from. Its query encoder runs as the ``cast_seg`` segmentation stage (position table
28x28 -> 64x64 at load, then to each image's superpixel grid) with the MoCo projector on every token; level-4
segments (clusters 320/160/80/40 of cast_small); memory of train+ prototypes (10,582 images); top-20 vote;
test images at max side 512 with SEEDS 1024 at the original resolution; SPML's benchmark over 21 classes.

Lists are SPML's (``image label [instance]`` per line, relative to ``--data_dir``, the VOCdevkit folder whose
``VOC2012/segcls`` holds class-index label PNGs). Not run here (no VOC).
"""

import ml_collections

from cast_jax.train.config_lib import finalize_retrieval


def get_config(arg=None):
  c = ml_collections.ConfigDict(dict(
      checkpoint='', data_dir='', memory_list='', query_list='', num_classes=21, test_image_size=512,
      num_superpixels=1024, max_segments=1024, num_clusters='', top_k=20, chunk=4096))
  return finalize_retrieval(c, arg)
