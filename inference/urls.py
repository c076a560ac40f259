from django.urls import path

from inference import analytics_api, analytics_views, views

urlpatterns = [
    path("staff/backends/", views.backend_list, name="staff_backend_list"),
    path("staff/backends/<slug:name>/", views.backend_edit, name="staff_backend_edit"),
    path("staff/backends/<slug:name>/state/", views.backend_state, name="staff_backend_state"),
    path("staff/backends/<slug:name>/delete/", views.backend_delete, name="staff_backend_delete"),
    path("t/<slug:slug>/playground/", views.playground, name="tenant_playground"),
    path("t/<slug:slug>/playground/history/", views.playground_history_list, name="tenant_playground_history"),
    path("t/<slug:slug>/playground/history/<str:conversation_id>/", views.playground_history_open,
         name="tenant_playground_history_open"),
    path("t/<slug:slug>/conversations/", analytics_views.conversations, name="tenant_conversations"),
    path("t/<slug:slug>/conversations/<uuid:conversation_pk>/", analytics_views.conversation_detail,
         name="tenant_conversation_detail"),
    path("api/v1/conversations", analytics_api.ConversationListView.as_view(), name="api_conversations"),
    path("api/v1/conversations/<uuid:conversation_pk>", analytics_api.ConversationDetailView.as_view(),
         name="api_conversation_detail"),
]
