"""``python -m stages``: the ``noisy-student`` CLI (:mod:`noisy_student.cli`), every DVC stage and the tools."""

from noisy_student.cli import app

if __name__ == "__main__":
    app()
