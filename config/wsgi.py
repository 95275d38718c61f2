import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# The demo has no separate worker process: jobs run in threads of this one (runserver loads
# this module too). In production PACKDESK_INPROCESS_WORKER is off and rundramatiq runs them.
from config.dramatiq import start_inprocess_worker  # noqa: E402

start_inprocess_worker()
