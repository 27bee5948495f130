"""promptrun: run a catalogue of prompts against several LLMs on a schedule."""

__version__ = "0.1.0"
