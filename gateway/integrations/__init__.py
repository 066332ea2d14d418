"""Integrations: wirepipe's adapters to agent frameworks, each in its own package.

An integration turns what one framework does (its LLM tokens, logs, plans,
code, messages, questions to a human) into wirepipe events on a ``WebPipe``,
and offers that framework's runs as gateway apps (``async def app(pipe, input)``).

- ``gateway.integrations.metagpt``: MetaGPT (``attach``, ``run_in_thread``,
  the ``data_interpreter`` and ``team`` apps, an offline scripted LLM).
- ``gateway.integrations.demo``: a scripted agent with no framework at all,
  for the demo and tests.

The rules (docs/STYLE, "Integrations live in their own room and load lazily"):

- The core (``protocol`` and ``gateway`` outside this package) never imports
  an integration, nor the framework behind it; it reaches one only through an
  app named by the user or the CLI (``--app NAME=module:callable``,
  ``wirepipe demo``).  ``tests/gateway/test_metagpt_absent.py`` checks it.
- Importing an integration has no side effect: it writes no file, sets no
  environment variable and does not import its framework.  Setting the
  framework up is an explicit call (``gateway.integrations.metagpt.prepare``)
  that the integration's own entry points make on first use.
"""
