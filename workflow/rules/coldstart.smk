# Base model and cold starts: pretrain once per grid, one SFT per teacher some arm starts from, and an
# eval of each checkpoint. Outputs are Hugging Face checkpoint files (rl_core.coldstart's contract).
# Params carry only what shapes a checkpoint (GRID.stage_config), so an RL knob in the grid's `base`
# does not rebuild them. Each job's log has two files: NAME.last.log (Snakemake's log: it empties it before
# the job runs, and shows it when the job fails) and NAME.log, appended to (tee -a): a re-run keeps the history.


rule pretrain:
    output:
        model_files("base"),
    log:
        f"{LOGS}/coldstart/pretrain.last.log",
    params:
        history=f"{LOGS}/coldstart/pretrain.log",
        out=lambda w, output: os.path.dirname(output[0]),
        config=lambda w: stage_json("pretrain"),  # a function: braces in task strings are not wildcards
    threads: GRID.base_config.train.threads
    shell:
        "{PYTHON} -m rl_core.coldstart pretrain --out {params.out} --config-json {params.config:q} "
        "2>&1 | tee -a {params.history:q} | tee {log}"


rule sft:
    input:
        model_files("base"),
    output:
        model_files("{teacher}"),
    log:
        f"{LOGS}/coldstart/sft_{{teacher}}.last.log",
    params:
        history=lambda w: f"{LOGS}/coldstart/sft_{w.teacher}.log",
        base=lambda w, input: os.path.dirname(input[0]),
        out=lambda w, output: os.path.dirname(output[0]),
        config=lambda w: stage_json("sft", w.teacher),
    threads: GRID.base_config.train.threads
    shell:
        "{PYTHON} -m rl_core.coldstart sft --teacher {wildcards.teacher} --init {params.base} "
        "--out {params.out} --config-json {params.config:q} 2>&1 | tee -a {params.history:q} | tee {log}"


rule coldstart_eval:
    input:
        lambda w: model_files(w.model),
    output:
        f"{GDIR}/models/eval_{{model}}.json",
    log:
        f"{LOGS}/coldstart/eval_{{model}}.last.log",
    params:
        history=lambda w: f"{LOGS}/coldstart/eval_{w.model}.log",
        ckpt=lambda w, input: os.path.dirname(input[0]),
        config=lambda w: stage_json("eval", w.model),
    threads: GRID.base_config.train.threads
    shell:
        "{PYTHON} -m rl_core.coldstart eval --ckpt {params.ckpt} --out {output} "
        "--config-json {params.config:q} 2>&1 | tee -a {params.history:q} | tee {log}"
