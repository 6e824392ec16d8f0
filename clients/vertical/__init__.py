"""Vertical FL ClientApp handlers: each party holds ONLY its own table and runs only its stages.

A party is the lender (partition-id 0), ecommerce (1) or bank (2) in simulation, or the node
config `partner` when deployed. It loads its own known customer IDs and its own columns
(`common.vertical.parties.load_party`), runs its side of the PSI and of stages 1-5, keeps its state
(PSI keys and order, alignment, models) in the Context state between messages, and writes its
own signed ledger. The coordinator only relays (`server.vertical`): every payload a party sends
another is sealed end to end (`common.vertical.channel`, keys exchanged inside the PSI messages,
`PartyBase.sealed_for` / `open_from`). `common.protocol` lists the message types, what each
carries and who sends it:

- `alignment`: `query.vfl_hello`, the PSI (`query.psi_open`, `_respond`, `_finish`, `_align`) and
  the split (`query.vfl_split`);
- `stages`: stage 1 labels (`query.vfl_labels`), stages 2-3 (`train.vfl_bottom`), stage 5
  (`query.vfl_embed`), stage 4 and the metrics (`evaluate.vfl_score`), scoring
  (`query.vfl_score`);
- `finetune`: non-private joint fine-tuning (`train.vfl_top`, `train.vfl_finetune`);
- `registry`: the `Party` with every handler; `routing`: their registration on the ClientApp
  (light: the handlers load when a vertical message arrives).
"""
