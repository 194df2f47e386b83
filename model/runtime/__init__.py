"""Where and how code runs: the device, bfloat16 where it is fast, memory layout and freed
memory, seeding (``device``); BatchNorm folded into the conv before it for passes that read
only the output (``folding``); atomic files and output checks (``files``); several processes
under torchrun (``distributed``).

Imports only ``model.errors`` (``model.IMPORT_RULES``).
"""
