"""The Megatron-core training engine (``train.engine: megatron``, an optional extra).

    engine.py     MegatronPolicy, load_megatron
    convert.py    the HF <-> Megatron state-dict mapping
    parallel.py   tensor and expert parallelism: slicing, gathering, gradient reduction
"""
