"""Shared inference: a Triton server for many streams (``inference-server``) and model repositories for one."""
