"""Training runs as a user sees them: the registry of run folders (registry: ids, layout, progress read from
metrics.jsonl) and their lifecycle (lifecycle: start, queue, watch, cancel, resume, wait, delete).

A run's every start or resume is a task of the task machine (phi3lora.tasks), whose body is phi3lora.training.task.
It may import phi3lora's foundation, phi3lora.data, phi3lora.policy and phi3lora.tasks, and the torch-free
phi3lora.training.memory_estimate (a run that would not fit is refused at its start); torch only where a run is
started (its model's defaults), never to list or watch runs.
"""
