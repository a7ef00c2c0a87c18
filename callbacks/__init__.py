"""Lightning callbacks for ECOS proxy runs: a proxy report and a cross-run privacy ledger."""

from ecos_lightning.console import show_project_logs

from .privacy_ledger import PrivacyLedger, ledger_epsilon, read_ledger
from .proxy_report import ProxyReport, plot_proxy_report

show_project_logs()

__all__ = ["PrivacyLedger", "ProxyReport", "ledger_epsilon", "plot_proxy_report", "read_ledger"]
