"""Evaluating checkpoints outside training: ``python -m cast_jax.evaluate`` runs a config's evaluators.

Modules: ``knn`` (weighted kNN on frozen features), ``segment_scores`` / ``score_hierarchy`` /
``compare_hierarchies`` (hierarchy levels against PartWorld masks, and pictures of them), ``spml_retrieval`` /
``spml_retrieval_main`` / ``spml_inputs`` / ``spml_finetune`` (SPML's VOC protocols). The evaluators a training
run calls are registered in ``cast_jax.evaluators``.
"""
