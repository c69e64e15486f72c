"""phi3lora: fine-tune Microsoft Phi-3 with LoRA or QLoRA, and compare base and adapted answers side by side."""
