"""What this server allows: who may see and do what (access), which base models may be loaded (allowed_models), and
the operator's limits on what one request or user may cost (limits).

It owns the rules, not the things they guard; it may import phi3lora.settings and phi3lora.errors, and the run
registry (phi3lora.runs.registry) to read who owns a run. Never torch, transformers or gradio.
"""
