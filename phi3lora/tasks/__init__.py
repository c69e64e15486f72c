"""Background tasks: one machine that queues, starts, watches, cancels and explains every kind of detached work
(training runs, evaluations, exports), and the write-once records and process identities it is built on.

It owns the task folder's records, the GPU queue, the multi-process launch and the ledger of who holds GPU memory
(gpu_memory.py); it may import phi3lora.settings, phi3lora.errors, phi3lora.config (YAML read safely) and
phi3lora.base_model (whether a GPU could be used, without torch where none could), and
imports a kind's body (training, evaluation, export) only by name, in the task's own process: nothing here
imports torch when a task is started or watched.
"""
