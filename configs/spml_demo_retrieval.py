r"""SPML segment retrieval on PartWorld's object masks with the MoCo demo (``configs/demo.py``), no download.

    python -m cast_jax.evaluate.spml_retrieval_main --config=configs/spml_demo_retrieval.py \
        --checkpoint=/tmp/cast_demo
    python -m cast_jax.evaluate.spml_retrieval_main --config=configs/spml_demo_retrieval.py --checkpoint=/tmp/cast_demo \
        --untrained   # the same network at its seeded initialisation (seed 0, as the demo run drew it)

The PartWorld version of ``configs/spml_cast_s_voc_retrieval.py`` (SPML's "before fine-tuning" protocol: no
parameter is trained, train labels only name the memory's prototypes): the memory holds the level-4 segment
prototypes of the first 1024 PartWorld train images with their majority labels, each segment of the first 512
validation images takes the top-20 vote of its cosine neighbours, and SPML's benchmark counts 9 classes
(background + the 8 objects, ``partworld_segmentation``'s 'objects' labels). Images are rendered as the demo
trained on them: 64 px with ``palette='class'``. SEEDS (SPML's test settings) asks for 49 superpixels, the count
the demo trained with, in the demo's 64 token slots; clusters stay the checkpoint's 16/8/4/2, so level 4 is the
last one (2 segments per image; ``--segment_level=3`` takes the 4 level-3 segments instead).

The demo is a ``cast`` MoCo model (class-token readout, no BlockFusion): ``spml_retrieval.last_stage_model`` puts
the projector on each last-stage token, as SPML puts it on every fused token of ``cast_seg``
(``models.spml.LastStageEmbedding`` says why). Not a training config: ``spml_retrieval_main`` reads its fields as
the defaults of its options. A few minutes on a CPU; README "Segmentation" has the numbers.
"""

import ml_collections

from cast_jax.train.config_lib import finalize_retrieval


def get_config(arg=None):
  c = ml_collections.ConfigDict(dict(
      checkpoint='', partworld=True, memory_images=1024, query_images=512, partworld_image_size=64,
      palette='class', seg_labels='objects', partworld_seed=0, num_classes=9, test_image_size=64,
      num_superpixels=49, max_segments=64, num_clusters='', segment_level=0, top_k=20, chunk=4096))
  return finalize_retrieval(c, arg)
