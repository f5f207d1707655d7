# Base model and cold starts: pretrain once per grid, one SFT per teacher some arm starts from, and an
# eval of each checkpoint. Outputs are Hugging Face checkpoint files (rl_core.coldstart's contract).
# Params carry only what shapes a checkpoint (GRID.stage_config), so an RL knob in the grid's `base`
# does not rebuild them. Logs are appended to (tee -a): a re-run keeps the history.


rule pretrain:
    output:
        model_files("base"),
    log:
        f"{LOGS}/coldstart/pretrain.log",
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        config=lambda w: stage_json("pretrain"),  # a function: braces in task strings are not wildcards
    threads: GRID.base_config.train.threads
    shell:
        "{PYTHON} -m rl_core.coldstart pretrain --out {params.out} --config-json {params.config:q} "
        "2>&1 | tee -a {log}"


rule sft:
    input:
        model_files("base"),
    output:
        model_files("{teacher}"),
    log:
        f"{LOGS}/coldstart/sft_{{teacher}}.log",
    params:
        base=lambda w, input: os.path.dirname(input[0]),
        out=lambda w, output: os.path.dirname(output[0]),
        config=lambda w: stage_json("sft", w.teacher),
    threads: GRID.base_config.train.threads
    shell:
        "{PYTHON} -m rl_core.coldstart sft --teacher {wildcards.teacher} --init {params.base} "
        "--out {params.out} --config-json {params.config:q} 2>&1 | tee -a {log}"


rule coldstart_eval:
    input:
        lambda w: model_files(w.model),
    output:
        f"{GDIR}/models/eval_{{model}}.json",
    log:
        f"{LOGS}/coldstart/eval_{{model}}.log",
    params:
        ckpt=lambda w, input: os.path.dirname(input[0]),
        config=lambda w: stage_json("eval", w.model),
    threads: GRID.base_config.train.threads
    shell:
        "{PYTHON} -m rl_core.coldstart eval --ckpt {params.ckpt} --out {output} "
        "--config-json {params.config:q} 2>&1 | tee -a {log}"
