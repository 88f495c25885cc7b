"""yool: an agent kernel that coding assistants plug into."""

__version__ = "0.1.0"
