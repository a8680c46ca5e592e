r"""Segmenter fine-tuning on PartWorld's object masks: 9 classes (background + the 8 object classes), no download.

    python -m cast_jax.main --config=configs/seg_demo.py --workdir=/tmp/cast_seg_demo
    # from the supervised demo's run (its encoder; the decoder starts fresh, as the original's):
    python -m cast_jax.main --config=configs/seg_demo.py --workdir=/tmp/cast_seg_demo_ft \
        --config.init_checkpoint=/tmp/cast_deit_demo

The demo's model (96 wide, 2-2-2-1 blocks, 64 px, 16/8/4/2 clusters) as a ``cast_seg_deit`` encoder under the
Segmenter's 2-block mask transformer, on 64 px crops of the mmseg recipe (crop with cat_max_ratio 0.75, flip,
photometric distortion). Each pixel of the 64 px PartWorld images is labelled 0 (background) or 1 + its object's
class. SEEDS as the Segmenter's (its x255 wrap included), one segment per ~84 pixels (about 49 on 64 px). mIoU and
pixel accuracy on all 512 validation images are printed before training (step 0), at step 256 and at the end.

Two departures from the original's recipe, both measured (README "Segmentation"): AdamW at 1e-3 instead of SGD
Nesterov (the original's 160k-step schedule; at 512 steps SGD learned only the background prior, even from the
90% supervised encoder), and no random rescaling (the original's 0.5-2x on a 64 px image leaves objects of 16
px or crops of a quarter object; with it the model could not fit even 64 training images in 200 steps).
"""

from cast_jax.train.config_lib import finalize, segmenter_defaults


def get_config(arg=None):
  c = segmenter_defaults('ade20k')
  # The model of demo / deit_demo (config_lib.use_demo_model_and_data), so that /tmp/cast_deit_demo's encoder fits.
  c.model.update(kind='cast_seg_deit', variant='small', image_size=64, embed_dim=96, depth=(2, 2, 2, 1), num_heads=4,
                 num_clusters=(16, 8, 4, 2), max_segments=64, seg_classes=9, drop_path_rate=0.0)
  c.data.update(name='partworld_segmentation', seg_labels='objects', train_split='train', eval_split='validation',
                source_image_size=64, num_train_examples=4096, num_eval_examples=512, crop_size=64,
                img_scale=(64, 64), ratio_range=(1.0, 1.0), cat_max_ratio=0.75, reduce_zero_label=False,
                window_stride=48, window_batch=2, superpixels='segmentation',
                superpixel_overrides={'pixels_per_segment': 84, 'iterations': 10}, num_workers=0, read_threads=2)
  c.batch_size = 32
  c.num_epochs = 4
  c.optimizer = 'adamw'  # measured: SGD (lr 2e-2 or 0.1) learns only the background prior in 512 steps (README)
  c.base_lr = 1e-3
  c.min_lr = 1e-5
  c.log_every_steps = 16
  c.checkpoint_every_steps = 128
  c.keep_checkpoints = 2
  c.eval_at_start = True  # the untrained decoder's mIoU first, in the same log
  c.eval_batch_size = 64
  c.evals.miou.every_steps = 256  # and the last step (512)
  return finalize(c, arg)
