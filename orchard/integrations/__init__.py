"""Callbacks that report a training library's progress to Orchard and stop it when pruned.

==========  ==========================================================
module      what
==========  ==========================================================
lightgbm    :func:`~orchard.integrations.lightgbm.pruning_callback`
==========  ==========================================================

Each imports its library only when used; PyTorch Lightning and Keras need no
module here (see the pruning guide: a few lines in their own callback API).
"""
