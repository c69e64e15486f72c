"""Answers from a base and its adapters: what an adapter folder says, read without torch (adapter_info), loading
adapters onto one base (adapters), the side-by-side engine that streams mixed-adapter batches on one model thread
(engine, model_thread, few_rows), the chat service the app holds (service), adapter zips and hub adapters
(adapter_zip), blind A/B votes (votes) and held-out evaluation (evaluation, also a background task).

It may import phi3lora's foundation, phi3lora.data, phi3lora.policy, phi3lora.runs and phi3lora.tasks; never gradio.
"""
