"""``make demo``: the whole loraops lifecycle on one machine, against a local AWS emulator.

Import a stand-in base, fine-tune it both ways with the real trainer run the way SageMaker runs it, register with
lineage through the registration function, approve, organise, serve base + adapter and the merged model through the
local serving front, and write a report. The same code paths as in AWS; only AWS itself is emulated (moto).
"""
