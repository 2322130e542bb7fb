"""What the tests share: builders, helpers and fixtures' machinery (no tests here).

* :mod:`tests.support.wait` - ``until`` / ``until_sync``: poll a condition with a deadline.
* :mod:`tests.support.tools` - ``require_tool`` and the ``tools`` mark: a missing tool skips a
  test locally and fails it under ``CI=true``; ``skip_kernel`` for missing kernel features.
* :mod:`tests.support.policy` - resource builders (``wep``, ``hep``, ``gnp``...) and ``Cluster``.
* :mod:`tests.support.nft` - commands in namespaces, a node with two pods (``Lab``) and
  ``chain_body`` for nftables tests.
* :mod:`tests.support.cli` - the real ``tortie`` command line against a test etcd.
* :mod:`tests.support.lab_cli` - ``run_tortie`` (lab verbs), ``cli``/``weps`` against a lab.
* :mod:`tests.support.kubernetes` - the real-Kubernetes lab tests' helpers.
* :mod:`tests.support.fake_kube_api` - an in-process Kubernetes API server.
* :mod:`tests.support.fuzz_corpus` - the ``apply`` fuzz corpus and its mutations.

Test modules import from here, never from one another.
"""
