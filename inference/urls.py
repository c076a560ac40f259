from django.urls import path

from inference import views

urlpatterns = [
    path("staff/backends/", views.backend_list, name="staff_backend_list"),
    path("staff/backends/<slug:name>/", views.backend_edit, name="staff_backend_edit"),
    path("staff/backends/<slug:name>/state/", views.backend_state, name="staff_backend_state"),
    path("staff/backends/<slug:name>/delete/", views.backend_delete, name="staff_backend_delete"),
    path("t/<slug:slug>/playground/", views.playground, name="tenant_playground"),
]
