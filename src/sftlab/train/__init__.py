"""SFT training on transformers' Trainer + PEFT: config, tokenized data, collation, loss, callbacks, runs."""
