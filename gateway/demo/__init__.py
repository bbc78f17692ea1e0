"""The demo pair: a date-normalisation task, its teacher, and ``shadow-gateway demo``.

:mod:`gateway.demo.task` is pure (the generator, the exact solver, the teacher's documented
bug, the export verifier); :mod:`gateway.demo.teacher` serves the teacher over HTTP;
:mod:`gateway.demo.stack` starts Postgres, the teacher, the vLLM student and the gateway;
:mod:`gateway.demo.replay` sends traffic; :mod:`gateway.demo.walkthrough` is what
``shadow-gateway demo`` does with them (shadow, threshold, rollout, report), and
:mod:`gateway.demo.redistill` what ``--redistill`` adds (one real ``distill`` run).
"""
