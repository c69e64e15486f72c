"""Taking an adapter where Phi-3 runs: a merged standalone model (export, a background task) and a Hugging Face Space
built and pushed from this project (space), and a run's adapter or merged model pushed to a Hub model repository
with its model card (hub_push, model_card).

It may import phi3lora's foundation, phi3lora.inference (adapter loading), phi3lora.runs and phi3lora.tasks.
"""
