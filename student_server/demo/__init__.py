"""The demo student: a tiny character-level Llama distilled from the demo teacher.

:mod:`student_server.demo.charlm` builds its tokenizer and config, :mod:`.train` trains it
on the teacher's verified answers, :mod:`.evaluate` measures it per slice; the weights the
repository ships are in ``model/`` with their ``MODEL_CARD.md``.
"""
