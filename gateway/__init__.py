"""shadow-gateway: serve the teacher, shadow the student, log both."""

__version__ = "0.1.0"
