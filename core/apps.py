from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Operations log lines for money and credit changes (not business logic: see the module).
        from core import audit_log

        audit_log.connect()
