"""Django-free code shared by the control plane and the data plane. Imports no app and no project package."""
