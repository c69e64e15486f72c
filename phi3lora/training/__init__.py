"""How an adapter is trained: the trainer set up from a job (trl's SFTTrainer with a peft LoRA config, QLoRA's 4-bit
base), the callbacks through which a training process reports, and the body of a background training task.

It owns what happens inside one training process; it may import phi3lora's foundation (settings, errors, config,
modeling), phi3lora.data, phi3lora.runs.registry (the run folder it writes into) and phi3lora.tasks.
"""
