"""`llmpy train`: llm.c's train_gpt2 main loop and its operational features.

    config.py      TrainConfig (every flag, validated before any work starts)
    schedule.py    learning-rate schedules: cosine, linear, constant, wsd, each with linear warmup
    outlier.py     z-score outlier detector over a window (llm.c's outlier_detector.h)
    checkpoint.py  model + optimizer/loader/RNG state, DONE markers, keeping the last k, exact resume
    log.py         main.log in llm.c's line format, console progress (tqdm on a terminal)
    loop.py        the training loop: val, sample, HellaSwag, train steps, checkpoints, Ctrl-C
"""
