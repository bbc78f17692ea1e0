"""The bounded background pipeline that calls the student."""
