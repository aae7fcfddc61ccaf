"""Encoder PEFT family (paper: peft-sam-biomedical-study; METHODS.md section 5).

Importing this package registers: freeze-encoder, attn-tune, bias-tune, ln-tune, late-ft,
full-ft, lora, late-lora, qlora, fact, ssf, adaptformer, cellseg1, cellseg1-md, samed.
"""

from vplab.peft.encoder import adaptformer, cellseg1, fact, lora, qlora, selective, ssf  # noqa: F401
