"""What the command line needs beyond the DPO path: settings, what each command builds, run
directories, checkpoints, LoRA and data-parallel processes.

    config.py         TrainConfig: every setting with its flag and help, each command's defaults,
                      validation
    commands.py       what each command builds (model, data, reference, objective) before it trains
                      or samples
    run_dir.py        a run's directory and bookkeeping: one run per directory, --resume,
                      metrics.jsonl, saves
    checkpoint.py     atomic checkpoints, exact resume, loading --init models of every kind
    lora.py           low-rank adapters on a frozen model (Hu et al. 2021), and the base model under
                      them
    data_parallel.py  torchrun: process groups, gathering, one writer
"""
