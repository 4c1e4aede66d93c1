"""`llmpy train`: llm.c's train_gpt2 main loop and its operational features, for GPT-2 and Llama alike.

    config.py      TrainConfig (every flag, validated before any work starts)
    schedule.py    learning-rate schedules: cosine, linear, constant, wsd, each with linear warmup
    outlier.py     z-score outlier detector (llm.c's outlier_detector.h); UpdateGuard: skip or apply, diverged
    checkpoint.py  model + optimizer/loader/RNG state, DONE markers, keeping the last k (and the newest healthy),
                   exact resume, damaged states rejected, the output directory's lock
    log.py         main.log in llm.c's line format, console progress (tqdm on a terminal outside mpirun)
    peak.py        the measured sgemm peak behind "% of sgemm peak"
    family.py      the model families the loop talks to: GPT-2 (llm.c checkpoints), Llama (llama2.c v0 files)
    loop.py        the training loop: val, sample, HellaSwag, train steps, checkpoints, Ctrl-C, divergence
"""
