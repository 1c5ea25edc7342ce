from django.urls import path

from . import api

urlpatterns = [
    path("studies/", api.StudyListCreateApi.as_view(), name="study-list"),
    path("studies/<uuid:study_id>/", api.StudyDetailApi.as_view(), name="study-detail"),
    path("studies/<uuid:study_id>/images/", api.StudyImagesApi.as_view(), name="study-images"),
    path("studies/<uuid:study_id>/files/", api.StudyFilesAppendApi.as_view(),
         name="study-files"),
    path("studies/<uuid:study_id>/close/", api.StudyCloseApi.as_view(), name="study-close"),
    path("studies/<uuid:study_id>/cancel/", api.StudyCancelApi.as_view(), name="study-cancel"),
    path("studies/<uuid:study_id>/retry/", api.StudyRetryApi.as_view(), name="study-retry"),
    path("studies/<uuid:study_id>/export.csv", api.StudyExportCsvApi.as_view(),
         name="study-export-csv"),
    path("studies/<uuid:study_id>/export.json", api.StudyExportJsonApi.as_view(),
         name="study-export-json"),
    path("images/<uuid:image_id>/file/", api.ImageFileApi.as_view(), name="image-file"),
    path("images/<uuid:image_id>/preview/", api.ImagePreviewApi.as_view(),
         name="image-preview"),
    path("images/<uuid:image_id>/heatmap/", api.ImageHeatmapApi.as_view(), name="image-heatmap"),
]
