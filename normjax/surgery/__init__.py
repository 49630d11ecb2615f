"""Whole-model rewrites that know model internals (attribute names of the transformer stack).

* ``normjax.surgery.folding``: fold norms whose eval mode is affine (BatchNorm, PowerNorm,
  Unified Normalization, a frozen FakeLN) into the adjacent linear layers of a ViT / GPT-2.
* ``normjax.surgery.conversions``: the exact Pre-LN -> Pre-RMSNorm -> Pre-CRMSNorm parameter
  conversions of GPT-2 and ViT (Jiang et al., NeurIPS 2023).

They sit above both ``normjax.norms`` and ``normjax.models`` (and import them); neither of those
imports this package.
"""
