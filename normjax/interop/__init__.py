"""Foreign checkpoints and tokenizers in and out of normjax.

* ``hf``: Hugging Face GPT-2 directories (``config.json`` + safetensors) to a normjax ``GPT2``
  and back, the LN-free export of a LayerNorm-removal run, and the trainer's
  ``config.init_from = {'hf': PATH}``.
* ``hf_files``: where a checkpoint's files are (plain directory, sharded, hub cache layout) and
  the safetensors reading and writing, with the numpy API only.
* ``text``: tokenizers for text in and out (GPT-2 BPE files through ``tokenizers``, or bytes).

The optional packages (``safetensors``, ``tokenizers``: ``pip install 'normjax[hf]'``) are
imported when a function needs them; torch and transformers are never needed at run time.
"""
