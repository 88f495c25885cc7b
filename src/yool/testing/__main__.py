"""`python -m yool.testing`: serve a fake LLM provider on loopback; prints its URL."""

from yool.testing.fake_provider import main

main()
